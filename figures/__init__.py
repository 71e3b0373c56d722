"""The paper's figures, drawn from the tidy tables experiments write (this package never trains).

``style`` holds the one figure style; each other module draws one figure family from a table;
``run_index`` reads the index of the paper's runs (written by experiments/paper_runs.py);
``make_all`` regenerates every figure. Nothing here imports experiments.
"""
