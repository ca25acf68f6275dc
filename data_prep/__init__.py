"""Corpus preparation: text8/enwik8 for char-LM, long-document corpora for MLM. May import fairseq, never the model code."""
