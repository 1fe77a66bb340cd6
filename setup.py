"""The one build step pyproject.toml cannot declare yet (setuptools calls its table experimental).

The memo's reading from the wire (authz/grpc/wire.py) is a C extension. It is optional: an
install without a C compiler still works, and reads every request through protobuf instead.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "authz.grpc._wire",
            ["authz/grpc/_wire.c"],
            optional=True,
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        )
    ]
)
