"""Evaluation: xsim / xsim++ bitext-mining error rates (more evaluators live in ``plugins/``).

Importing this package is cheap (numpy only); faiss, torch and tqdm load when used.
"""

from clse.eval.xsim import margin_nn, xsim, xsim_error_rate

__all__ = ["margin_nn", "xsim", "xsim_error_rate"]
