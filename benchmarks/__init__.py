"""Speed benchmarks: engine in-process (`bench engine`) and HTTP load (`bench serve`)."""
