// k6 closed-loop load: each VU POSTs a 4 KiB body in a loop.
//   k6 run -e URL=http://127.0.0.1:8080/post --vus 50 --duration 30s load-tests/k6/post-4k.js
import http from 'k6/http';
import { check } from 'k6';

const body = 'x'.repeat(4096);

export const options = {
  discardResponseBodies: true,
  summaryTrendStats: ['avg', 'p(50)', 'p(90)', 'p(99)', 'max'],
};

export default function () {
  const res = http.post(__ENV.URL || 'http://127.0.0.1:8080/post', body, {
    headers: { 'Content-Type': 'application/octet-stream' },
  });
  check(res, { 'status is 200': (r) => r.status === 200 });
}
