"""Built-in method adapters, installed as ``tdabench.methods``. One module per method family."""
