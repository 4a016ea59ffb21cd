/* `relbooth bench train`: one RelationLoRA training step on a random-weight SDXL UNet (bench_train.c). */
#ifndef RB_BENCH_TRAIN_H
#define RB_BENCH_TRAIN_H

int bench_train_main(int argc, char **argv);

#endif
