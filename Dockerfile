# ngx_http_kv_module on Debian's nginx: a persistent key-value database on
# /db/{key}, port 8080, data in the volume /var/lib/nginx-kv.
#
#   docker build -t nginx-kv .
#   docker run -d --name kv -p 8080:8080 -v kv-data:/var/lib/nginx-kv nginx-kv
#   docker stop kv        # SIGQUIT: nginx finishes in-flight requests

# Build the module with the same make targets CI runs (.ci/run -> make test).
FROM debian:bookworm AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends make
WORKDIR /src
COPY . .
RUN make deps-build build

# Debian's nginx, the module and its runtime libraries.
FROM debian:bookworm
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        nginx libprotobuf-c1 libcjson1 libxxhash0 curl \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/build/ngx_http_kv_module.so /usr/lib/nginx/modules/
COPY --from=build /src/build/kvtool /usr/local/bin/
COPY nginx.conf.example /etc/nginx/nginx.conf
RUN install -d -o www-data -g www-data -m 0750 /var/lib/nginx-kv \
 && nginx -t

VOLUME /var/lib/nginx-kv
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
