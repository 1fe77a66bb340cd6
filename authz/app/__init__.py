"""The app: the composition root (serve), workers, reloads, the admin port, JWKS fetchers."""
