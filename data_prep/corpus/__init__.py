"""Long-document pretraining corpus (Longformer paper §5, Table 5): Books, English Wikipedia, Realnews and
Stories -> GPT-2 BPE (or sentencepiece) -> fairseq binaries, with corpus statistics.

The stages, one module each:

* ``readers``    raw source files -> ``Document`` / ``Problem`` stream, one reader per source form;
* ``selection``  the paper's filters: seeded one-third sampling, the Realnews length filter, caps, splits;
* ``tokenizers`` GPT-2 BPE exactly as RoBERTa, or sentencepiece (given or trained on a sample);
* ``pipeline``   streaming, parallel, resumable tokenization into per-split id files (a journal);
* ``binarize``   fairseq's own ``fairseq-preprocess`` and the atomic publication of ``data-bin``;
* ``stats``      Table 5 columns, length histograms, share of documents past 512 / 4,096 tokens;
* ``cli``        the ``longformer-prep-corpus`` console script.

Nothing here imports the model code; fairseq itself is only run as a subprocess (``fairseq-preprocess``)
or loaded for its GPT-2 encoder module, so tokenizer workers stay small.
"""
