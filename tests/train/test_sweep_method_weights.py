"""``hyperkd sweep --methods`` takes the ``--kd`` term syntax: a method's own weight and tap."""
from pathlib import Path

import pytest

from hyperkd.train import sweep
from hyperkd.train.student import StudentConfig


def test_methods_carry_their_own_weights_and_taps():
    specs = sweep.parse_methods("at0@0.03,ab/bn,at1:p=4@2")
    assert specs == ["none", "at0@0.03", "ab/bn", "at1:p=4@2"]
    terms = StudentConfig(model="resnet20", kd=specs[1]).terms()
    assert [(t.method, t.weight) for t in terms] == [("at0", 0.03)]
    assert sweep.run_dir(Path("out"), "at0@0.03", 1) == Path("out/at0_0.03/seed1")


@pytest.mark.parametrize("text, message", [
    ("at0@x", "the weight after '@' in 'at0@x' must be a number >= 0"),
    ("at0@-1", "must be a number >= 0"),
    ("at9@1", "unknown KD method 'at9'"),
])
def test_bad_method_weights(text, message):
    with pytest.raises(ValueError, match=message):
        sweep.parse_methods(text)
