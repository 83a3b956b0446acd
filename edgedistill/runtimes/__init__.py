"""Runtimes: what each file format runs in (the table is formats.RUNTIMES), the outputs a file
computes there (outputs.py), child-process isolation (child.py) and the workers it starts
(llama_worker, qnn_worker, bench_worker), timing runs (runners.py), CUDA (cuda.py) and
fixed-shape graphs on the HTP (qnn.py)."""
