package dev.mdexport.core

import dev.mdexport.core.TestSupport.assertClose
import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertNotEquals
import org.junit.Test

class RandomTest {
    /**
     * torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed)) from make_goldens.py,
     * several draws in a row from one generator. Counts >= 16 go through torch's float32 SIMD
     * Box-Muller (agreement ~1e-6); smaller counts through its double path (bit-exact).
     */
    @Test fun torchGeneratorMatchesTorchRandn() {
        val cases = TestSupport.golden("rng").objects("torch_cases")
        assertEquals(6, cases.size)
        for (c in cases) {
            val seed = c.long("seed")
            val g = TorchGenerator(seed)
            c.objects("draws").forEachIndexed { d, draw ->
                val count = draw.int("count")
                val v = g.randn(count)
                val msg = "seed $seed draw $d (${draw.intList("shape")})"
                assertEquals("$msg count", count, v.size)
                if (draw.has("values")) {
                    val expected = draw.doubleList("values")
                    for (i in expected.indices) {
                        if (count < 16) assertEquals("$msg [$i]", expected[i].toFloat(), v[i], 0f)
                        else assertClose("$msg [$i]", expected[i], v[i].toDouble(), 2e-6)
                    }
                } else {
                    draw.doubleList("head").forEachIndexed { i, e -> assertClose("$msg head[$i]", e, v[i].toDouble(), 2e-6) }
                    val tail = draw.doubleList("tail")
                    tail.forEachIndexed { i, e -> assertClose("$msg tail[$i]", e, v[count - tail.size + i].toDouble(), 2e-6) }
                    draw.intList("index").zip(draw.doubleList("at_index")).forEach { (k, e) -> assertClose("$msg [$k]", e, v[k].toDouble(), 2e-6) }
                }
                assertClose("$msg sum", draw.double("sum"), v.sumOf { it.toDouble() }, 1e-4)
            }
        }
    }

    @Test fun mersenneTwisterReferenceOutputs() {
        // the 10000th output of std::mt19937 default-seeded (5489) is 4123659995 (C++ standard, [rand.predef])
        val mt = MT19937(5489)
        var last = 0L
        repeat(10000) { last = mt.nextU32() }
        assertEquals(4123659995L, last)
        // torch seeds with the low 32 bits only
        assertArrayEquals(TorchGenerator(5).randn(40), TorchGenerator((1L shl 32) + 5).randn(40), 0f)
    }

    @Test fun defaultNoiseIsTorch() {
        assertEquals(NoiseGenerator.TORCH, GenerationRequest("x").noise)
        assertArrayEquals(TorchGenerator(9).randn(64), NoiseGenerator.TORCH.create(9).randn(64), 0f)
    }

    @Test fun matchesThePythonReference() {
        for (c in TestSupport.golden("rng").objects("cases")) {
            val seed = c.long("seed")
            val first = java.lang.Long.toUnsignedString(SeededGaussian(seed).nextLong())
            assertEquals("first word, seed $seed", (c.array("u64_first")[0] as String), first)
            val g = SeededGaussian(seed)
            c.doubleList("gaussians").forEachIndexed { i, expected ->
                assertEquals("seed $seed sample $i", expected, g.nextGaussian().toFloat().toDouble(), 1e-6)
            }
        }
    }

    @Test fun statisticsLookNormal() {
        val g = SeededGaussian(7)
        val n = 200_000
        var sum = 0.0
        var sq = 0.0
        repeat(n) { val x = g.nextGaussian(); sum += x; sq += x * x }
        val mean = sum / n
        assertEquals(0.0, mean, 0.01)
        assertEquals(1.0, sq / n - mean * mean, 0.01)
    }

    @Test fun seedsDiffer() {
        assertNotEquals(SeededGaussian(1).nextGaussian(), SeededGaussian(2).nextGaussian())
        assertEquals(SeededGaussian(3).nextGaussian(), SeededGaussian(3).nextGaussian(), 0.0)
        assertNotEquals(TorchGenerator(1).randn(16)[0], TorchGenerator(2).randn(16)[0])
    }
}
