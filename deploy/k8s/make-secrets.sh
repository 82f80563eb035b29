#!/usr/bin/env bash
# Makes the two Secrets the manifests mount (docs/security.md, "Kubernetes"), with Debian's
# openssl: tessera-tls (a CA, ca.pem, and one certificate for every Tessera pod, node.pem and
# node.key: the servers' and the coordinator's Service names, localhost and 127.0.0.1 for the
# probes) and tessera-tokens (tokens: admin, the job's admin+worker, reader, server).
#   deploy/k8s/make-secrets.sh [--namespace NS] [--out DIR]
# With --out the files are written to DIR only; otherwise kubectl creates the Secrets from a
# temporary directory that is left in place for its ca.key: keep that key somewhere safe (it
# issues more certificates) and remove the directory.
set -euo pipefail
ns=default
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --namespace) ns=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "make-secrets: unknown argument $1 (known: --namespace NS, --out DIR)" >&2; exit 2 ;;
  esac
done
command -v openssl >/dev/null || { echo "make-secrets: needs openssl (apt install openssl)" >&2; exit 1; }
dir=${out:-$(mktemp -d)}
mkdir -p "$dir"
umask 077
names="DNS:*.tessera-server,DNS:*.tessera-server.$ns.svc,DNS:*.tessera-server.$ns.svc.cluster.local"
names="$names,DNS:*.tessera-coordinator,DNS:*.tessera-coordinator.$ns.svc"
names="$names,DNS:*.tessera-coordinator.$ns.svc.cluster.local,DNS:localhost,IP:127.0.0.1"
# Serving replicas dial their relay by its Service name (deploy/k8s/serving.yaml).
names="$names,DNS:tessera-serving-relay,DNS:tessera-serving-relay.$ns.svc"
names="$names,DNS:tessera-serving-relay.$ns.svc.cluster.local"
cat >"$dir/node.ext" <<END
subjectAltName=$names
extendedKeyUsage=serverAuth,clientAuth
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
END
ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
openssl req -x509 "${ec[@]}" -days 3650 -subj "/CN=tessera CA ($ns)" \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
  -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
openssl req "${ec[@]}" -subj "/CN=tessera node ($ns)" -keyout "$dir/node.key" \
  -out "$dir/node.csr" 2>/dev/null
openssl x509 -req -days 365 -in "$dir/node.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
  -CAcreateserial -extfile "$dir/node.ext" -out "$dir/node.pem" 2>/dev/null
job=$(openssl rand -hex 24)
{
  echo "# docs/security.md: 'ROLE TOKEN' lines"
  echo "admin $(openssl rand -hex 24)"
  echo "admin $job"
  echo "worker $job"
  echo "reader $(openssl rand -hex 24)"
  echo "server $(openssl rand -hex 24)"
} >"$dir/tokens"
openssl verify -CAfile "$dir/ca.pem" "$dir/node.pem" >/dev/null
if [ -n "$out" ]; then
  echo "make-secrets: files in $out (ca.pem, ca.key, node.pem, node.key, tokens)"
  exit 0
fi
kubectl -n "$ns" create secret generic tessera-tls --from-file="$dir/ca.pem" \
  --from-file="$dir/node.pem" --from-file="$dir/node.key"
kubectl -n "$ns" create secret generic tessera-tokens --from-file="$dir/tokens"
echo "make-secrets: created tessera-tls and tessera-tokens in $ns; the CA's key is $dir/ca.key"
