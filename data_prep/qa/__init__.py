"""``longformer-prep-qa``: SQuAD-format question answering data -> fairseq binaries (``cli.py``)."""
