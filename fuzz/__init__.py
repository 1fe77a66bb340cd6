"""Coverage-guided fuzz targets (atheris) for the token layer and the Check handler.

Kept free of imports: a target instruments ``authz`` before anything imports it.
"""
