"""Shared test support: the live stack, the Cloudinary stand-in, test images."""
