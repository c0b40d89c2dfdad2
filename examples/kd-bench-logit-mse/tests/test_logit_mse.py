import pytest
from bench.errors import BenchError
from bench.testing import check_distiller

from bench_logit_mse import LogitMSE


@pytest.mark.parametrize("options", [None, {"alpha": 0.3}, {"alpha": 0.0}])
def test_conforms(options):
    check_distiller(LogitMSE, options)


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_alpha_outside_0_1_is_refused(alpha):
    with pytest.raises(BenchError, match=r"alpha must lie in \[0, 1\]"):
        LogitMSE({"alpha": alpha})
