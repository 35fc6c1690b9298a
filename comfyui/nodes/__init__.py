"""One module per node; ``comfyui/__init__.py`` registers them."""
