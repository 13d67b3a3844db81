// Exports rows of gauges to aeserve over OTLP/gRPC with the OpenTelemetry JS SDK, as a service
// instrumented with OpenTelemetry would: one observable gauge per feature (synth.m0, synth.m1, ...),
// resource attribute host.name, one collection (and export) per row.
//   node export.js <host:port> <rows.json>   rows.json: {"host": "...", "rows": [[...], ...]}
'use strict';
const fs = require('fs');
const { MeterProvider, PeriodicExportingMetricReader } = require('@opentelemetry/sdk-metrics');
const { OTLPMetricExporter } = require('@opentelemetry/exporter-metrics-otlp-grpc');
const { Resource } = require('@opentelemetry/resources');

async function main() {
  const [target, file] = process.argv.slice(2);
  const { host, rows, interval_ms: interval = 200 } = JSON.parse(fs.readFileSync(file, 'utf8'));
  const exporter = new OTLPMetricExporter({ url: `http://${target}` });
  const reader = new PeriodicExportingMetricReader({ exporter, exportIntervalMillis: 3600000 });
  const provider = new MeterProvider({
    resource: new Resource({ 'host.name': host, 'service.name': 'otlp-test' }),
    readers: [reader],
  });
  const meter = provider.getMeter('aeserve-otlp-test');
  let row = rows[0];
  for (let f = 0; f < row.length; ++f) {
    meter.createObservableGauge(`synth.m${f}`).addCallback((r) => r.observe(row[f]));
  }
  let failures = 0;
  for (let i = 0; i < rows.length; ++i) {
    row = rows[i];
    await reader.forceFlush();
    await new Promise((done) => setTimeout(done, interval));
  }
  await provider.shutdown();
  console.log(`exported ${rows.length} rows of ${rows[0].length} gauges for ${host}`);
}

main().catch((e) => {
  console.error('export failed:', e);
  process.exit(1);
});
