"""One spelling of the common flags across the console scripts; renamed flags keep their old spelling
as a hidden alias."""

from __future__ import annotations

import pytest

from data_prep.charlm import build_parser as charlm_parser
from data_prep.corpus.cli import build_parser as corpus_parser
from fairseq_longformer.convert_roberta import build_parser as convert_parser
from fairseq_longformer.demo import build_parser as demo_parser
from fairseq_longformer.staged_train import build_parser as staged_parser

CORPUS_REQUIRED = ["--books", "b", "--gpt2-encoder-json", "e", "--gpt2-vocab-bpe", "v", "--dict", "d"]

# tool, arguments besides the flag, (new flag, old flag, value), the namespace attribute
RENAMED = [
    (corpus_parser, CORPUS_REQUIRED, ("--output", "--out-dir", "corpus"), "output"),
    (staged_parser, ["schedule.yaml"], ("--input", "--data", "data-bin"), "input"),
    (staged_parser, ["schedule.yaml"], ("--output", "--save-dir", "ckpt"), "output"),
    (demo_parser, [], ("--output", "--workdir", "demo"), "output"),
]


@pytest.mark.parametrize("build,argv,flags,dest", RENAMED, ids=lambda x: x if isinstance(x, str) else None)
def test_renamed_flag_keeps_its_old_spelling_hidden(build, argv, flags, dest):
    new, old, value = flags
    parser = build()
    by_new = parser.parse_intermixed_args([*argv, new, value])
    by_old = parser.parse_intermixed_args([*argv, old, value])
    assert str(getattr(by_new, dest)) == value and vars(by_new) == vars(by_old)
    help_text = parser.format_help()
    assert new in help_text and old not in help_text


def test_required_output_is_named_by_its_new_spelling(capsys):
    with pytest.raises(SystemExit):
        corpus_parser().parse_args(CORPUS_REQUIRED)
    assert "the following arguments are required: --output" in capsys.readouterr().err


@pytest.mark.parametrize("build", [charlm_parser, corpus_parser, convert_parser, staged_parser, demo_parser])
def test_tools_share_one_spelling_of_the_common_flags(build):
    flags = {s for action in build()._actions for s in action.option_strings}
    for old in ("--out-dir", "--outdir", "--save-dir", "--workdir", "--data", "--force", "--num-workers", "--jobs"):
        assert old not in flags
    assert flags & {"--input", "--output"}
