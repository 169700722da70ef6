"""Route families, one folder per dialect; each is a plugin of `register_routes`."""
