"""segtune: the Ray Tune sweep around segcore (search spaces, the trial function, Optuna bridge, results)."""
