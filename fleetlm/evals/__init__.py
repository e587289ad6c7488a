"""Evaluations against public benchmarks: BFCL loading and conversion (:mod:`.bfcl`), BFCL's
AST checker (:mod:`.bfcl_checker`), and the ``fleet eval`` command (:mod:`.cli`)."""
