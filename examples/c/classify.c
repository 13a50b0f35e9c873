/* classify.c: a C program running a ConvNeXt V2 model compiled ahead of time by cnx.
 *
 *   cnx compile tiny-1k-224 --emit obj --output tiny.o --symbol-prefix tiny   # tiny.o, tiny.h
 *   cc -O2 -DCNX_MODEL_HEADER='"tiny.h"' -I. examples/c/classify.c tiny.o \
 *      -Ltarget/release -l:libconvnextv2.a -lpthread -ldl -lm -o classify
 *   cnx preprocess --model tiny-1k-224 photo.jpg --output pixels.npy
 *   ./classify model.safetensors pixels.npy
 *
 * Written once for any cnx model: it includes the header named by CNX_MODEL_HEADER with
 * CNX_MODEL_ALIASES defined, and uses the model-independent names the header then defines.
 *
 * usage: classify WEIGHTS|--embedded PIXELS.npy [--top K] [--threads N] [--batch B]
 *                 [--logits OUT.f32] [--pooled OUT.f32] [--runs N]
 *   PIXELS.npy  float32 pixel values, shape (batch, C, H, W) or (C, H, W), as `cnx preprocess`
 *               writes them
 *   --batch B   run B images: the file's, repeated in turn (for timing larger batches)
 *   --logits F  write the logits (batch x NUM_LABELS float32, little-endian) to F
 *   --pooled F  write the pooled features (batch x HIDDEN_SIZE) to F
 *   --runs N    time N more forward passes after the first and print their median
 */
#define CNX_MODEL_ALIASES
#ifndef CNX_MODEL_HEADER
#define CNX_MODEL_HEADER "model.h"
#endif
#include CNX_MODEL_HEADER

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int fail(const char *what, int code) {
    fprintf(stderr, "classify: %s failed (code %d): %s\n", what, code, cnx_last_error());
    return 2;
}

/* Reads a little-endian float32 C-order .npy of shape (B, C, H, W) or (C, H, W) matching the
 * model's input; returns the values (malloc'ed) and the batch, or NULL with a message. */
static float *read_npy(const char *path, size_t *batch) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "classify: %s: %s\n", path, strerror(errno));
        return NULL;
    }
    unsigned char magic[10];
    float *data = NULL;
    char *header = NULL;
    if (fread(magic, 1, 10, f) != 10 || memcmp(magic, "\x93NUMPY", 6) != 0 || magic[6] != 1) {
        fprintf(stderr, "classify: %s: not a version 1 .npy file\n", path);
        goto done;
    }
    size_t header_len = magic[8] | (size_t)magic[9] << 8;
    header = calloc(header_len + 1, 1);
    if (!header || fread(header, 1, header_len, f) != header_len) {
        fprintf(stderr, "classify: %s: truncated header\n", path);
        goto done;
    }
    if (!strstr(header, "'descr': '<f4'") || !strstr(header, "'fortran_order': False")) {
        fprintf(stderr, "classify: %s: expected little-endian float32 in C order\n", path);
        goto done;
    }
    const char *shape = strstr(header, "'shape': (");
    size_t dims[4] = {0}, n = 0;
    for (const char *p = shape ? shape + 10 : NULL; p && *p && *p != ')' && n < 4;) {
        char *end;
        unsigned long long v = strtoull(p, &end, 10);
        if (end == p)
            break;
        dims[n++] = (size_t)v;
        p = end;
        while (*p == ',' || *p == ' ')
            p++;
    }
    size_t b = n == 4 ? dims[0] : 1;
    const size_t *chw = n == 4 ? dims + 1 : dims;
    if ((n != 3 && n != 4) || b == 0 || chw[0] != CNX_INPUT_CHANNELS ||
        chw[1] != CNX_INPUT_HEIGHT || chw[2] != CNX_INPUT_WIDTH) {
        fprintf(stderr, "classify: %s: expected shape (batch, %d, %d, %d)\n", path,
                CNX_INPUT_CHANNELS, CNX_INPUT_HEIGHT, CNX_INPUT_WIDTH);
        goto done;
    }
    size_t count = b * CNX_INPUT_CHANNELS * CNX_INPUT_HEIGHT * CNX_INPUT_WIDTH;
    data = malloc(count * sizeof(float));
    if (!data || fread(data, sizeof(float), count, f) != count) {
        fprintf(stderr, "classify: %s: truncated data\n", path);
        free(data);
        data = NULL;
        goto done;
    }
    *batch = b;
done:
    free(header);
    fclose(f);
    return data;
}

static int write_floats(const char *path, const float *v, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(v, sizeof(float), n, f) != n || fclose(f) != 0) {
        fprintf(stderr, "classify: %s: %s\n", path, strerror(errno));
        return 2;
    }
    return 0;
}

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s WEIGHTS|--embedded PIXELS.npy [--top K] [--threads N] "
                        "[--batch B] [--logits OUT.f32] [--pooled OUT.f32] [--runs N]\n",
                argv[0]);
        return 2;
    }
    const char *weights = argv[1], *pixels_path = argv[2];
    const char *logits_path = NULL, *pooled_path = NULL;
    size_t top = 5, threads = 0, batch = 0, runs = 0;
    for (int i = 3; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--top"))
            top = strtoul(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--threads"))
            threads = strtoul(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--batch"))
            batch = strtoul(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--logits"))
            logits_path = argv[i + 1];
        else if (!strcmp(argv[i], "--pooled"))
            pooled_path = argv[i + 1];
        else if (!strcmp(argv[i], "--runs"))
            runs = strtoul(argv[i + 1], NULL, 10);
        else {
            fprintf(stderr, "classify: unknown option %s\n", argv[i]);
            return 2;
        }
    }

    cnx_model *model = NULL;
    int code;
    if (!strcmp(weights, "--embedded")) {
#if CNX_WEIGHTS_EMBEDDED
        code = cnx_model_load_embedded(&model);
#else
        fprintf(stderr, "classify: the object was compiled without --embed-weights\n");
        return 2;
#endif
    } else {
        code = cnx_model_load(weights, &model);
    }
    if (code != CNX_OK)
        return fail("load", code);
    if (threads && (code = cnx_model_set_threads(model, threads)) != CNX_OK)
        return fail("set_threads", code);

    size_t file_batch = 0;
    float *file_pixels = read_npy(pixels_path, &file_batch);
    if (!file_pixels) {
        cnx_model_free(model);
        return 2;
    }
    const size_t image = (size_t)CNX_INPUT_CHANNELS * CNX_INPUT_HEIGHT * CNX_INPUT_WIDTH;
    if (!batch)
        batch = file_batch;
    float *pixels = malloc(batch * image * sizeof(float));
    float *logits = malloc(batch * CNX_NUM_LABELS * sizeof(float));
    float *pooled = malloc(batch * CNX_HIDDEN_SIZE * sizeof(float));
    double *times = malloc((runs + 1) * sizeof(double));
    int status = 2;
    if (!pixels || !logits || !pooled || !times) {
        fprintf(stderr, "classify: out of memory\n");
        goto done;
    }
    for (size_t b = 0; b < batch; b++)
        memcpy(pixels + b * image, file_pixels + (b % file_batch) * image, image * sizeof(float));

    /* Both outputs in one pass, every length checked. */
    if ((code = cnx_model_run(model, pixels, batch * image, logits, batch * CNX_NUM_LABELS,
                              pooled, batch * CNX_HIDDEN_SIZE)) != CNX_OK) {
        fail("run", code);
        goto done;
    }
    for (size_t r = 0; r < runs; r++) {
        double t0 = now_ms();
        if ((code = cnx_model_forward(model, pixels, batch, logits)) != CNX_OK) {
            fail("forward", code);
            goto done;
        }
        times[r] = now_ms() - t0;
    }
    if (runs) {
        qsort(times, runs, sizeof(double), by_value);
        printf("forward: batch %zu, median %.2f ms over %zu runs (min %.2f, max %.2f)\n", batch,
               times[runs / 2], runs, times[0], times[runs - 1]);
    }

    for (size_t b = 0; b < batch && top; b++) {
        const float *row = logits + b * CNX_NUM_LABELS;
        float max = row[0];
        for (size_t k = 1; k < CNX_NUM_LABELS; k++)
            max = row[k] > max ? row[k] : max;
        double sum = 0;
        for (size_t k = 0; k < CNX_NUM_LABELS; k++)
            sum += exp((double)row[k] - max);
        printf("image %zu:\n", b);
        /* Top-k by repeated selection: k is small. */
        unsigned char *taken = calloc(CNX_NUM_LABELS, 1);
        for (size_t t = 0; taken && t < top && t < CNX_NUM_LABELS; t++) {
            size_t best = CNX_NUM_LABELS;
            for (size_t k = 0; k < CNX_NUM_LABELS; k++)
                if (!taken[k] && (best == CNX_NUM_LABELS || row[k] > row[best]))
                    best = k;
            taken[best] = 1;
            printf("  %5.2f%%  %s\n", 100.0 * exp((double)row[best] - max) / sum,
                   cnx_model_label(best));
        }
        free(taken);
    }
    status = 0;
    if (logits_path)
        status |= write_floats(logits_path, logits, batch * CNX_NUM_LABELS);
    if (pooled_path)
        status |= write_floats(pooled_path, pooled, batch * CNX_HIDDEN_SIZE);
done:
    free(times);
    free(pooled);
    free(logits);
    free(pixels);
    free(file_pixels);
    cnx_model_free(model);
    return status;
}
