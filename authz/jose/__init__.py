"""JOSE for access tokens: strict compact JWE and JWS, pinned keys, nested tokens.

Imports nothing from authz but its errors; the crypto is pyca/cryptography and jwcrypto.
"""
