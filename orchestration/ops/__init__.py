"""What an engineer runs: the `plumbline` CLI and the commands behind it (sync, backfill, replay,
deliveries, summary), and the bookkeeping of the processes that run them."""
