FROM scratch
ENV str=foobarbaz
ENV a=${str#f*b} b=${str##f*b} c=${str%b*} d=${str%%b*} e=${str/ba/fo} f=${str//ba/fo}
