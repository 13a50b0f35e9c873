/* Bad use of an object's C API is an error code and a message, never a crash; concurrent
 * calls on one model agree with sequential ones. Built and run by tests/aot.rs:
 *   abi_checks GOOD_WEIGHTS WRONG_WEIGHTS
 * Prints one line per check; exits 0 only if every check held. */
#define CNX_MODEL_ALIASES
#include CNX_MODEL_HEADER

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures = 0;

static void expect(const char *what, int got, int want, const char *needle) {
    const char *msg = got == CNX_OK || want == CNX_OK ? "" : cnx_last_error();
    int ok = got == want && (!needle || strstr(msg, needle));
    printf("%s %s: code %d (want %d): %s\n", ok ? "ok" : "FAILED", what, got, want, msg);
    failures += !ok;
}

#define IMAGE ((size_t)CNX_INPUT_CHANNELS * CNX_INPUT_HEIGHT * CNX_INPUT_WIDTH)

struct job {
    cnx_model *model;
    float *pixels;
    float logits[2 * CNX_NUM_LABELS];
    int code;
};

static void *forward_twice(void *arg) {
    struct job *j = arg;
    for (int i = 0; i < 2 && j->code == CNX_OK; i++)
        j->code = cnx_model_forward(j->model, j->pixels, 2, j->logits);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: abi_checks GOOD_WEIGHTS WRONG_WEIGHTS\n");
        return 2;
    }
    cnx_model *model = NULL, *other = NULL;
    float *pixels = calloc(2 * IMAGE, sizeof(float));
    float logits[2 * CNX_NUM_LABELS], pooled[2 * CNX_HIDDEN_SIZE];
    for (size_t i = 0; i < 2 * IMAGE; i++)
        pixels[i] = (float)sin((double)i);

    expect("load NULL path", cnx_model_load(NULL, &model), CNX_ERROR_ARGUMENT, "NULL");
    expect("load NULL out", cnx_model_load(argv[1], NULL), CNX_ERROR_ARGUMENT, "NULL");
    expect("load a missing file", cnx_model_load("/nonexistent/model.safetensors", &model),
           CNX_ERROR_IO, "nonexistent");
    expect("load another model's weights", cnx_model_load(argv[2], &model), CNX_ERROR_WEIGHTS,
           "does not match");
    expect("no model after a failed load", model == NULL ? CNX_OK : -1, CNX_OK, NULL);
    static const char junk[] = "not a safetensors file at all";
    expect("load junk bytes", cnx_model_load_from_memory(junk, sizeof junk, &model),
           CNX_ERROR_WEIGHTS, "safetensors");
    expect("load NULL bytes", cnx_model_load_from_memory(NULL, 10, &model), CNX_ERROR_ARGUMENT,
           NULL);

    expect("load", cnx_model_load(argv[1], &model), CNX_OK, NULL);
    if (!model)
        return 1;
    expect("threads 0", cnx_model_set_threads(model, 0), CNX_ERROR_ARGUMENT, "0");
    expect("threads 1e6", cnx_model_set_threads(model, 1000000), CNX_ERROR_ARGUMENT, "1 to 1024");
    expect("threads 2", cnx_model_set_threads(model, 2), CNX_OK, NULL);
    expect("forward NULL model", cnx_model_forward(NULL, pixels, 1, logits), CNX_ERROR_ARGUMENT,
           NULL);
    expect("forward NULL pixels", cnx_model_forward(model, NULL, 1, logits), CNX_ERROR_ARGUMENT,
           "NULL");
    expect("forward NULL logits", cnx_model_forward(model, pixels, 1, NULL), CNX_ERROR_ARGUMENT,
           "NULL");
    expect("forward batch 0", cnx_model_forward(model, pixels, 0, logits), CNX_ERROR_ARGUMENT,
           "batch is 0");
    expect("forward a huge batch", cnx_model_forward(model, pixels, (size_t)-1 / 2, logits),
           CNX_ERROR_ARGUMENT, "too large");
    expect("run a length off by one", cnx_model_run(model, pixels, IMAGE + 1, logits,
                                                    CNX_NUM_LABELS, NULL, 0),
           CNX_ERROR_ARGUMENT, "not a positive multiple");
    expect("run logits too short", cnx_model_run(model, pixels, 2 * IMAGE, logits,
                                                 CNX_NUM_LABELS, NULL, 0),
           CNX_ERROR_ARGUMENT, "logits holds");
    expect("run no outputs", cnx_model_run(model, pixels, IMAGE, NULL, 0, NULL, 0),
           CNX_ERROR_ARGUMENT, "nothing to compute");
    pixels[IMAGE + 5] = NAN;
    expect("forward NaN", cnx_model_forward(model, pixels, 2, logits), CNX_ERROR_INPUT, "NaN");
    pixels[IMAGE + 5] = 0.5f;
    expect("forward", cnx_model_forward(model, pixels, 2, logits), CNX_OK, NULL);
    expect("embed", cnx_model_embed(model, pixels, 2, pooled), CNX_OK, NULL);
    expect("label out of range", cnx_model_label(CNX_NUM_LABELS) == NULL ? CNX_OK : -1, CNX_OK,
           NULL);
    expect("label 0 is labels[0]",
           cnx_model_label(0) != NULL && cnx_model_label(0) == cnx_model_labels[0] ? CNX_OK : -1,
           CNX_OK, NULL);

    /* Two threads, one model: each forward pass agrees with the sequential one. */
    struct job jobs[2] = {{model, pixels, {0}, CNX_OK}, {model, pixels, {0}, CNX_OK}};
    pthread_t threads[2];
    for (int t = 0; t < 2; t++)
        pthread_create(&threads[t], NULL, forward_twice, &jobs[t]);
    for (int t = 0; t < 2; t++) {
        pthread_join(threads[t], NULL);
        expect("concurrent forward", jobs[t].code, CNX_OK, NULL);
        expect("concurrent forward equals sequential",
               memcmp(jobs[t].logits, logits, sizeof logits) ? -1 : CNX_OK, CNX_OK, NULL);
    }

    expect("load a second", cnx_model_load(argv[1], &other), CNX_OK, NULL);
    cnx_model_free(model);
    expect("forward after free", cnx_model_forward(model, pixels, 1, logits), CNX_ERROR_HANDLE,
           "not a live model");
    cnx_model_free(model); /* a second free is refused, not a double free */
    expect("the other model still runs", cnx_model_forward(other, pixels, 1, logits), CNX_OK,
           NULL);
    cnx_model_free(other);
    cnx_model_free(NULL);
    free(pixels);
    printf("%d failure(s)\n", failures);
    return failures != 0;
}
