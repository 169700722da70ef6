"""PyTorch / transformers backends of the gateway.

`torch`: causal LMs from a GGUF file (converted once to safetensors) or a Hugging Face
folder. `torch-embeddings`: sentence embeddings. Importing this package (or its plugin
module) does not import torch; the backend modules do, and only the factories import them.
"""

__version__ = "0.1.0"
