FROM nginx
COPY <<robots.txt <<humans.txt /usr/share/nginx/html/
User-agent: *
Disallow:
robots.txt
Manuel
humans.txt
COPY <<EOF foo.txt /bar/
inline
EOF
