# The native relay (relay.c), built by `npm run build:native` (node-gyp, against the headers of
# the Node on the machine). Linux only: it relays with epoll and splice(2).
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
    }
  ]
}
