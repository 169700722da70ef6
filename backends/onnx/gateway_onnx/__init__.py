"""The gateway's ONNX Runtime backend (`backend = "onnx"`): see README.md beside it."""
