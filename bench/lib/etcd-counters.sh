# shellcheck shell=sh
# etcd's own request and byte counters, for the vmlease-ha benchmarks
# (bench/ha-etcd-traffic, bench/ha-recovery). etcd runs in the test
# network's switch namespace (vmh_switch) and answers on $ETCD_URL.
#
#   etcd_counters FILE              the counters now, "NAME VALUE" lines:
#       req_SERVICE.METHOD: gRPC requests served (grpc_server_started_total;
#       the JSON gateway turns each HTTP request into one);
#       etcd_network_client_grpc_{received,sent}_bytes_total
#   etcd_rates BEFORE AFTER SECONDS HOSTS [INDENT]
#       prints the requests per second per host, by method, over the
#       interval between the two files, then the bytes per second (all
#       hosts); the last line is "all requests ... /s per host"

etcd_counters() {
    ip netns exec "$(vmh_switch)" curl -sf "$ETCD_URL/metrics" |
        awk '/^grpc_server_started_total/ { m = $1; sub(/.*grpc_method="/, "", m); sub(/".*/, "", m)
                                            v = $1; sub(/.*grpc_service="/, "", v); sub(/".*/, "", v); print "req_" v "." m, $2 }
             /^etcd_network_client_grpc_(received|sent)_bytes_total/ { print $1, $2 }' >"$1"
}

etcd_rates() {
    awk -v w="$3" -v hosts="$4" -v ind="${5:-    }" 'NR == FNR { a[$1] = $2; next }
        { d = $2 - a[$1]; if (d <= 0) next
          if ($1 ~ /^req_/) { tot += d; printf "%s%-36s %7.2f /s per host\n", ind, substr($1, 5), d / w / hosts }
          else if ($1 ~ /received/) rx = d; else tx = d }
        END { printf "%sbytes: etcd received %.0f B/s, sent %.0f B/s (all hosts)\n%s%-36s %7.2f /s per host\n", ind, rx / w, tx / w, ind, "all requests", tot / w / hosts }' \
        "$1" "$2"
}
