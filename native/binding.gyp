# The native relay (relay.c) and the native DNS relay (dns.c), built by `npm run build:native`
# (node-gyp, against the headers of the Node on the machine). Linux only: they relay with epoll,
# splice(2) and recvmmsg/sendmmsg(2).
{
  "targets": [
    {
      "target_name": "sluice_relay",
      "sources": ["relay.c"],
      "defines": ["NAPI_VERSION=8"],
      "cflags": ["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "conditions": [
        ["OS!='linux'", { "type": "none", "sources!": ["relay.c"] }]
      ]
    },
    {
      "target_name": "sluice_dns",
      "sources": ["dns.c"],
      "defines": ["NAPI_VERSION=8"],
      "cflags": ["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "conditions": [
        ["OS!='linux'", { "type": "none", "sources!": ["dns.c"] }]
      ]
    }
  ]
}
