"""Scrape a flowaudit /metrics endpoint as Prometheus would and print its samples as JSON.

Parsed with the Prometheus project's Python client (its OpenMetrics parser, which refuses what a
Prometheus server would refuse: a missing `# EOF`, a counter without `_total`, a bad label). Prints
{"content_type": ..., "families": {name: type}, "samples": [[name, labels, value], ...]}.
"""
import json
import sys
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families


def main(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        content_type = r.headers.get("Content-Type", "")
        text = r.read().decode("utf-8")
    families = {}
    samples = []
    for fam in text_string_to_metric_families(text):
        families[fam.name] = fam.type
        for s in fam.samples:
            samples.append([s.name, dict(s.labels), s.value])
    json.dump({"content_type": content_type, "families": families, "samples": samples}, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
