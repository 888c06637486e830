#!/usr/bin/env bash
# Makes the cluster's own CA and the NATS server's TLS certificate for the
# compose cluster (deploy/compose.yaml, profile "cluster"): the nodes check
# the bus's certificate against ca.pem (--bus-ca), so nobody between them
# and NATS can read or answer for it. Run once, from the repository root:
#   deploy/cluster-certs.sh [NATS_IP]      (default 172.28.0.6)
set -euo pipefail
ip=${1:-172.28.0.6}
out=$(dirname "$0")/cluster-certs
mkdir -p "$out"
cd "$out"
[ -e ca.pem ] && { echo "$out/ca.pem exists; remove $out to start over" >&2; exit 1; }
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
  -subj "/CN=rendezvous cluster CA" -keyout ca-key.pem -out ca.pem 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -subj "/CN=nats" -keyout nats-key.pem -out nats.csr 2>/dev/null
openssl x509 -req -in nats.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 825 \
  -extfile <(printf 'subjectAltName=IP:%s\n' "$ip") -out nats.pem 2>/dev/null
rm -f nats.csr ca.srl
chmod 644 ca.pem nats.pem nats-key.pem
chmod 600 ca-key.pem
echo "made $out/{ca.pem,nats.pem,nats-key.pem} (keep ca-key.pem offline)"
