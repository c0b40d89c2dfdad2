"""Results: the record files, reports and their rendering (tables, the results page, plots), the
paper's figures, significance tests, convergence, method traces and retiming."""
