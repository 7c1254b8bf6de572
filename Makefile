# Benchmarks (issue 6). Tests: bash scripts/test.sh; the main job: bash scripts/run.sh.
.PHONY: bench bench-full bench-env bench-results quality quality-hour quality-report

bench:          ## CPU suite (a few minutes on 2 idle cores) -> benchmarks/RESULTS.md
	bash scripts/bench.sh

bench-full:     ## the same plus every implementation at F=32768
	BENCH_FULL=1 bash scripts/bench.sh

bench-env:      ## only the benchmark environment .venv-bench (peers + our package)
	bash scripts/bench_env.sh

bench-results:  ## regenerate benchmarks/RESULTS.md from benchmarks/results/*.json
	.venv-bench/bin/python -m benchmarks.results

# Quality benchmark (issue 13; benchmarks/quality/README.md): every row trained by its own code on one cache,
# scored by one harness; resumable (jobs already in $MX_QBENCH/full.json are not rerun), caches built if missing;
# QUALITY_WORKERS parallel one-thread runners (default 2, one per core). Its cost: `run.py --estimate --workers 2`.
QUALITY_WORKERS ?= 2
quality:        ## the full quality grid on 2 workers (~2.1 h of 2 idle cores, see QUALITY.md) -> benchmarks/QUALITY.md
	bash scripts/bench_env.sh
	.venv/bin/python -m benchmarks.quality.run --build-caches --workers $(QUALITY_WORKERS) $(QUALITY_ARGS)
	.venv/bin/python -m benchmarks.quality.report

quality-hour:   ## the part of it that fits ~an hour: transcoder rows, layer 12, k 32, 3 seeds, both budgets
	bash scripts/bench_env.sh
	.venv/bin/python -m benchmarks.quality.run --build-caches --workers $(QUALITY_WORKERS) --layers 12 --ks 32 \
	  --rows ours,ours_plain,ours_skip,sparsify,sparsify_skip --seeds 0,1,2 --budgets tokens,time --splice last
	.venv/bin/python -m benchmarks.quality.report

quality-report: ## regenerate benchmarks/QUALITY.md from benchmarks/quality/results/*.json
	.venv/bin/python -m benchmarks.quality.report
