"""``longformer-convert-bart``: a fairseq BART directory -> an LED directory (Longformer paper §7, LED).

LED is initialized from BART with BART's layers and sizes: every encoder self-attention becomes
Longformer attention (window 1,024 by default, global attention on the first source token); the
encoder's learned positions grow from BART's 1,024 to 16,384 by copying BART's rows (16 copies) while
the two padding-offset rows 0 and 1 stay; the decoder, its 1,024 positions included, is unchanged;
the global projections Qg/Kg/Vg start as copies of Q/K/V (own parameters, not tied).

The source is read as fairseq reads it (``BARTModel.load_state_dict`` with its key upgrades, so the
released checkpoints' layout and current fairseq's both work). Before anything is written the LED is
loaded strictly, and its encoder output on a short input (shorter than half the smallest window, so
every token sees every other) is compared with BART's: on such inputs the two compute the same function.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass

import torch

from fairseq import tasks
from fairseq.models.bart import BARTModel

from data_prep.flags import add_input_output_flags

from .conversion import (
    ConversionError, check_output, check_positions, check_windows, converted_cfg, copy_global_projections,
    extend_positions, load_source_model, model_name, run_tool, source_positions, write_converted,
)
from .models.longformer_roberta import parse_attention_windows

logger = logging.getLogger("fairseq_longformer.convert_bart")

POSITIONS_KEY = "encoder.embed_positions.weight"
ARCH_MAP = {"bart_large": "longformer_bart_large", "mbart_large": "longformer_bart_large"}  # else base
CHECK_TOLERANCE = 1e-4  # float32 encoder outputs on the short check input (measured ~1e-6)


@dataclass
class LedConversionOptions:
    max_source_positions: int = 16384
    attention_window: str = "1024"


def load_bart(bart_dir: str):
    """Return ``(cfg, task, BARTModel)`` read from ``bart_dir/model.pt`` and ``dict.txt``."""
    return load_source_model(bart_dir, BARTModel, "BART", "bart_base/bart_large/mbart_*")


def led_state_dict(bart_state: dict, num_layers: int, options: LedConversionOptions) -> dict:
    """BART weights -> LED weights: encoder positions extended by copying, encoder Qg/Kg/Vg copied."""
    state = {k: v.clone() for k, v in bart_state.items()}
    state[POSITIONS_KEY] = extend_positions(bart_state[POSITIONS_KEY], options.max_source_positions)
    copy_global_projections(state, [f"encoder.layers.{i}.self_attn." for i in range(num_layers)])
    return state


def led_cfg(cfg, options: LedConversionOptions):
    """The source config with the model switched to ``longformer_bart`` and the source length raised."""
    arch = ARCH_MAP.get(getattr(cfg.model, "arch", None) or model_name(cfg.model), "longformer_bart_base")
    updates = dict(max_source_positions=options.max_source_positions, attention_window=options.attention_window,
                   attention_backend="auto", source_global_attention="cls")
    task_updates = dict(max_source_positions=options.max_source_positions,
                        tokens_per_sample=options.max_source_positions)
    return converted_cfg(cfg, arch, updates, task_updates)


def build_led(bart_dir: str, options: LedConversionOptions):
    """Convert in memory: returns ``(cfg, led_model, bart_model)``; nothing is written."""
    cfg, _, bart = load_bart(bart_dir)
    source = source_positions(bart.encoder.embed_positions.weight)
    check_positions(options.max_source_positions, source, "--max-source-positions")
    num_layers = len(bart.encoder.layers)
    check_windows(options.attention_window, num_layers)

    new_cfg = led_cfg(cfg, options)
    led = tasks.setup_task(new_cfg.task).build_model(new_cfg.model)
    led.load_state_dict(led_state_dict(bart.state_dict(), num_layers, options), strict=True,
                        model_cfg=new_cfg.model)  # proves the names line up
    check_short_input(bart, led, min(parse_attention_windows(options.attention_window, num_layers)), source)
    return new_cfg, led, bart


def check_short_input(bart, led, min_window: int, source: int) -> float:
    """Encoder outputs of BART and LED on one input every LED token sees whole; returns max |diff|."""
    length = max(1, min(16, min_window // 2 + 1, source))
    dictionary = bart.encoder.dictionary
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(dictionary.nspecial, len(dictionary), (1, length), generator=generator)
    tokens[0, 0] = dictionary.bos()
    tokens[0, -1] = dictionary.eos()
    bart.eval(), led.eval()
    with torch.no_grad():
        expected = bart.encoder(tokens)["encoder_out"][0]
        got = led.encoder(tokens)["encoder_out"][0]
    difference = (got.float() - expected.float()).abs().max().item()
    if not difference <= CHECK_TOLERANCE:
        raise ConversionError(
            f"the converted encoder differs from BART's on a {length}-token input (max |diff| {difference:.3g} > "
            f"{CHECK_TOLERANCE}); the source's layout is not one this converter knows, please report it"
        )
    return difference


def convert(input_dir: str, output_dir: str, options: LedConversionOptions, overwrite: bool = False):
    """Convert and write ``output_dir`` (``model.pt`` + ``dict.txt`` + BPE files); returns the LED model."""
    check_output(input_dir, output_dir, overwrite)
    cfg, led, bart = build_led(input_dir, options)
    write_converted(input_dir, output_dir, cfg, led.state_dict(), "LabelSmoothedCrossEntropyCriterion")
    logger.info("wrote %s: %d encoder / %d decoder layers, encoder positions %d -> %d, decoder positions %d, "
                "attention window %s", output_dir, len(bart.encoder.layers), len(bart.decoder.layers),
                source_positions(bart.encoder.embed_positions.weight), options.max_source_positions,
                bart.decoder.max_positions(), options.attention_window)
    return led


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="longformer-convert-bart", description=__doc__.split("\n\n")[0])
    add_input_output_flags(parser, "fairseq BART directory (model.pt, dict.txt)",
                           "directory to write the LED model to",
                           overwrite_help="replace an existing OUTPUT/model.pt")
    parser.add_argument("--max-source-positions", type=int, default=16384,
                        help="new maximum source length of the encoder (default 16384); the decoder keeps BART's")
    parser.add_argument("--attention-window", default="1024",
                        help="encoder sliding window per layer, even (default 1024); one value or a comma list per layer")
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    options = LedConversionOptions(args.max_source_positions, str(args.attention_window))
    run_tool("longformer-convert-bart", lambda: convert(args.input, args.output, options, overwrite=args.overwrite))


if __name__ == "__main__":
    main(sys.argv[1:])
