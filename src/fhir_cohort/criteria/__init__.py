"""Criteria: the trial definition (data from ``queries/``) and the evaluator.

Rule of this layer: the evaluator is a pure function from one patient's facts,
a trial definition and an as-of date to a result. It does no I/O, reads no
clock and keeps no state, so the embedded pipeline and a distributed engine
run the very same function and get the very same answers.
"""
