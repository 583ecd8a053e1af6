"""dualprop-jax."""
