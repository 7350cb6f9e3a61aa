"""tamis's library: typed params, paths, tables, models, losses, metrics, calibration, compression, tracking.

The stage scripts in ``stages/`` read their inputs, call these functions,
write their outputs and log; no stage module imports another.
"""
