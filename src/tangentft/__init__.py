"""tangentft: predictable, cheap fine-tuning of pretrained language models.

Layers (imports only point downwards):
  models/ data/  ->  ntk/  ->  analysis/
  models/ data/  ->  methods/  ->  train/  ->  adapters/, taskvec/
  cli/ calls the library; the library never imports cli/.
"""

__version__ = "0.1.0"
