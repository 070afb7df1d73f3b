FROM alpine
FOOBAR x y
