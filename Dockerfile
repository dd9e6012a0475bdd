# ngx_http_kv_module on Debian's nginx: a persistent key-value database on
# /db/{key}, port 8080, data in the volume /var/lib/nginx-kv.
#
#   docker build -t nginx-kv .
#   docker run -d --name kv -p 8080:8080 -v kv-data:/var/lib/nginx-kv nginx-kv
#   docker stop kv        # SIGQUIT: nginx finishes in-flight requests

# Build the Debian packages with the target that CI tests (make deb).
FROM debian:bookworm AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends make
WORKDIR /src
COPY . .
RUN make deb

# Debian's nginx and the packages, which bring the module's runtime
# libraries (their dependencies) and kvtool.
FROM debian:bookworm
COPY --from=build /src/build/deb/libnginx-mod-http-kv_*.deb \
                  /src/build/deb/kvtool_*.deb /tmp/deb/
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        nginx curl /tmp/deb/*.deb \
 && rm -rf /var/lib/apt/lists/* /tmp/deb
COPY nginx.conf.example /etc/nginx/nginx.conf
RUN install -d -o www-data -g www-data -m 0750 /var/lib/nginx-kv \
 && nginx -t

VOLUME /var/lib/nginx-kv
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
