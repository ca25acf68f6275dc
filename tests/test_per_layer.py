"""The one per-layer option parser shared by every model."""

import pytest
from omegaconf import OmegaConf

from fairseq_longformer.modules.per_layer import per_layer


@pytest.mark.parametrize("value", [64, "64", [64], (64,), " 64 "])
def test_one_value_applies_to_every_layer(value):
    assert per_layer(value, 3) == [64, 64, 64]


@pytest.mark.parametrize("value", ["16,32,64", "[16, 32, 64]", [16, 32, 64], ("16", "32", "64"),
                                   OmegaConf.create([16, 32, 64])])
def test_one_value_per_layer_in_every_spelling(value):
    assert per_layer(value, 3) == [16, 32, 64]


@pytest.mark.parametrize("value, num_layers, kwargs, message", [
    ("16,32", 3, {}, "has 2 values but the model has 3 layers"),
    ("a,b", 2, {}, "an int or a comma list of ints"),
    ("", 2, {}, "an int or a comma list of ints"),
    (1.5, 2, {}, "an int or a comma list of ints"),
    (True, 2, {}, "an int or a comma list of ints"),
    ("8,7", 2, {"even": True}, r"even ints >= 0 .*got \[7\]"),
    ("0,4", 2, {"minimum": 1}, r"ints >= 1, got \[0\]"),
])
def test_bad_values_are_refused_with_the_option_named(value, num_layers, kwargs, message):
    with pytest.raises(ValueError, match=message):
        per_layer(value, num_layers, "--attention-window", **kwargs)
    with pytest.raises(ValueError, match="^--dilation-x"):
        per_layer(value, num_layers, "--dilation-x", **kwargs)
