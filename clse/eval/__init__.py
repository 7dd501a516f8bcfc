"""Evaluation: xsim / xsim++ bitext-mining error rates, MEXA (more evaluators live in ``plugins/``).

Importing this package is cheap (numpy only); faiss, torch and tqdm load when used.
"""

from clse.eval.mexa import mexa_score
from clse.eval.xsim import margin_nn, xsim, xsim_error_rate

__all__ = ["margin_nn", "mexa_score", "xsim", "xsim_error_rate"]
