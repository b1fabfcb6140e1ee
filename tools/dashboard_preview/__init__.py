"""A preview of the Grafana dashboard shipped in deploy/grafana/ (issue #20), for a machine where Grafana itself
cannot be installed: the dashboard JSON read as Grafana reads it (panels, gridPos, titles, units, thresholds,
value mappings, PromQL targets with their legend formats), every target asked of a real Prometheus through its HTTP
API (query_range, as Grafana's Prometheus datasource asks), the panels drawn in their grid with matplotlib into one
HTML page, and that page photographed by headless Chromium.

It is not Grafana and must never be captioned as Grafana: it draws the same panels from the same queries.

| Module | What it holds |
|---|---|
| `dashboard` | the dashboard JSON as typed panels and targets; Grafana's `$__rate_interval` and legend formats |
| `prometheus` | a Prometheus server process scraping given targets, and its query_range API |
| `traffic` | meetings written through EWS (exchangelib) into a running sandbox, as Outlook writes them |
| `render` | the panels drawn in their grid into one HTML page |
| `chromium` | headless Chromium's screenshot of that page |
"""
