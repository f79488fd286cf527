// k6 open-loop load: a constant arrival rate, so a slow gateway cannot slow the load
// down (no coordinated omission). Reports p50/p99 of http_req_duration.
//   k6 run -e URL=http://127.0.0.1:8080/ -e RATE=20000 -e DURATION=30s load-tests/k6/constant-rate.js
import http from 'k6/http';
import { check } from 'k6';

export const options = {
  discardResponseBodies: true,
  scenarios: {
    constant: {
      executor: 'constant-arrival-rate',
      rate: Number(__ENV.RATE || 1000),
      timeUnit: '1s',
      duration: __ENV.DURATION || '30s',
      preAllocatedVUs: Number(__ENV.VUS || 200),
      maxVUs: Number(__ENV.MAX_VUS || 2000),
    },
  },
  summaryTrendStats: ['avg', 'p(50)', 'p(90)', 'p(99)', 'max'],
  thresholds: {
    http_req_failed: ['rate<0.001'],
  },
};

export default function () {
  const res = http.get(__ENV.URL || 'http://127.0.0.1:8080/');
  check(res, { 'status is 200': (r) => r.status === 200 });
}
