FROM alpine AS build
FROM scratch
COPY --from=build --chown=55:mygroup --chmod=755 --link /hello /
COPY --chmod=u=rwX,go=rX --parents --exclude=*.txt --exclude=*.md ./x/a.txt ./y/a.txt /parents/
COPY --from=0 /a /b
COPY --from=nginx:latest /etc/nginx/nginx.conf /nginx.conf
