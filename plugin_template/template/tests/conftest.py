# The gateway's fixtures for plugin tests: `gateway_client`, `training_context`, the
# backend contract's. Set `gateway_data_dir` in a fixture of your own to keep converted
# model weights between sessions.
pytest_plugins = ["gateway.testing.fixtures"]
