"""The exchange layer: the only package that imports ccxt."""
