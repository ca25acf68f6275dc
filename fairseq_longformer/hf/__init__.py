"""Hugging Face interop: ``longformer-export-hf`` (ours -> ``transformers``) and ``longformer-import-hf`` (back).

* ``mapping``: the one map between fairseq's and HF's weight names and config fields.
* ``vocab``: tokenizer files both ways (fairseq's GPT-2 ``encoder.json``/``vocab.bpe`` + ``dict.txt`` <-> HF's
  ``vocab.json``/``merges.txt`` in fairseq's index order).
* ``to_hf`` / ``from_hf``: the two command-line tools. Only ``to_hf`` needs ``transformers``
  (``pip install -e '.[hf]'``); importing reads the HF files directly.
"""
