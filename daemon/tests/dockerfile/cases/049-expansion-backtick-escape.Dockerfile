# escape=`
FROM scratch
ENV P=C:\Program` Files
COPY `$P $P
